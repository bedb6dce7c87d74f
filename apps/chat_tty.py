"""The chat's terminal: an input line that incoming messages do not break.

Theory of operation
-------------------
``qkdnet chat`` reads lines while messages arrive at any moment. Printing an incoming
line with a plain ``print`` splices it into whatever the user is typing, and reading
stdin in a worker thread cannot be cancelled, so Ctrl-C waited for Enter. When stdin
and stdout are both terminals, :class:`ChatTerminal` therefore runs a prompt_toolkit
prompt on an asyncio loop in a thread of its own, under ``patch_stdout``: whatever the
trio side prints goes above the input line, which prompt_toolkit redraws with the
half-typed text and the cursor where they were. prompt_toolkit keeps the terminal in
raw mode, so Ctrl-C arrives as a key: the prompt raises ``KeyboardInterrupt`` in its
thread, which sends the process the SIGINT the key would have sent in a cooked
terminal. Stopping on SIGINT is the CLI's business (``run_trio`` cancels the chat,
wherever it waits); leaving the ``async with`` block, by any route, ends the prompt
and puts the terminal back before it returns.

Without a terminal (a pipe, a file, a test driving stdin) the lines are read in a
worker thread that a cancellation abandons, and printed plainly.

Peer text is never printed as it came: :func:`printable` shows control characters
(an ANSI escape would otherwise run in the user's terminal) as visible escapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import unicodedata
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import trio

#: Characters shown escaped besides the Cc controls: line/paragraph separators and the
#: bidirectional overrides and isolates that reorder what a terminal displays.
_FORMAT_ESCAPED = frozenset("\u2028\u2029\u202a\u202b\u202c\u202d\u202e"
                            "\u2066\u2067\u2068\u2069")

PROMPT = "> "


def printable(text: str) -> str:
    """``text`` safe to print in a terminal: controls become ``\\x1b``-style escapes."""
    if text.isprintable():  # the common case, and a fast one
        return text
    out = []
    for ch in text:
        if unicodedata.category(ch) == "Cc" or ch in _FORMAT_ESCAPED:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def _is_terminal() -> bool:
    try:
        return sys.stdin.isatty() and sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


class ChatTerminal:
    """Lines typed by the user (:meth:`lines`) and lines shown to them (:meth:`say`).

    Use as ``async with ChatTerminal() as term``; ``interactive`` says whether the
    prompt_toolkit line editor is in use.
    """

    def __init__(self, *, interactive: bool | None = None) -> None:
        self.interactive = _is_terminal() if interactive is None else interactive
        self._send, self._recv = trio.open_memory_channel[Any](64)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._app: Any = None
        self._stopping = threading.Event()
        self._started = threading.Event()

    # -- output ----------------------------------------------------------------------

    def say(self, text: str) -> None:
        """Show one line (above the input line when the editor runs)."""
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    # -- input -----------------------------------------------------------------------

    async def lines(self) -> AsyncIterator[str]:
        """The user's lines until end of input (Ctrl-D)."""
        if not self.interactive:
            while True:
                line = await trio.to_thread.run_sync(sys.stdin.readline,
                                                     abandon_on_cancel=True)
                if not line:
                    return
                yield line.rstrip("\n")
        async for item in self._recv:
            if isinstance(item, EOFError):
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    # -- the editor thread -----------------------------------------------------------

    async def __aenter__(self) -> ChatTerminal:
        if self.interactive:
            token = trio.lowlevel.current_trio_token()
            self._thread = threading.Thread(target=self._run_editor, args=(token,),
                                            name="chat-input", daemon=True)
            self._thread.start()
            # The editor patches sys.stdout; wait so that nothing printed from now on
            # lands under the input line.
            await trio.to_thread.run_sync(self._started.wait, 5.0, abandon_on_cancel=True)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            # RuntimeError: the loop closed meanwhile, so the editor has ended
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._exit_prompt)
        # Shielded and short: the terminal must be restored even when cancelled.
        with trio.move_on_after(1.0) as scope:
            scope.shield = True
            await trio.to_thread.run_sync(thread.join, abandon_on_cancel=True)

    def _exit_prompt(self) -> None:
        app = self._app
        if app is not None and app.is_running and not app.future.done():
            app.exit(exception=EOFError())

    def _run_editor(self, token: trio.lowlevel.TrioToken) -> None:
        def hand_over(item: Any) -> bool:
            try:
                trio.from_thread.run_sync(self._send.send_nowait, item, trio_token=token)
                return True
            except (trio.RunFinishedError, trio.ClosedResourceError, trio.WouldBlock):
                return False

        async def edit() -> None:
            from prompt_toolkit import PromptSession
            from prompt_toolkit.output.vt100 import Vt100_Output
            from prompt_toolkit.patch_stdout import patch_stdout

            self._loop = asyncio.get_running_loop()
            # No cursor-position requests: nothing here needs them, and a terminal
            # that does not answer would get a warning printed into the chat.
            output = Vt100_Output.from_pty(sys.stdout)
            output.enable_cpr = False
            session: Any = PromptSession(output=output)
            with patch_stdout():
                self._app = session.app
                self._started.set()
                while not self._stopping.is_set():
                    try:
                        # pre_run: a stop asked for just before this prompt started.
                        line = await session.prompt_async(
                            PROMPT, handle_sigint=False,
                            pre_run=lambda: self._exit_prompt()
                            if self._stopping.is_set() else None)
                    except KeyboardInterrupt:
                        if not self._stopping.is_set():
                            # Ctrl-C as a key (raw mode): make it the signal it would
                            # have been, so it stops the chat wherever it is waiting.
                            os.kill(os.getpid(), signal.SIGINT)
                        return
                    except EOFError as err:
                        if not self._stopping.is_set():
                            hand_over(err)
                        return
                    if not hand_over(line):
                        return

        try:
            asyncio.run(edit())
        except BaseException as err:  # never die silently: the trio side must know
            hand_over(err)
        finally:
            self._started.set()


__all__ = ["PROMPT", "ChatTerminal", "printable"]
