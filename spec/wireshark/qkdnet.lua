-- Wireshark dissector for the qkdnet sideband (spec/protocol.md).
--
-- Load it with:  tshark -X lua_script:spec/wireshark/qkdnet.lua -r capture.pcap -V
-- or copy it into your personal Wireshark plugins folder.
--
-- Frames ride TCP (default port 7787) with a 4-byte length prefix; dissect_tcp_pdus
-- reassembles frames split over segments and splits segments holding several frames.
-- Layout: length u32 | version u8 | type u8 | flags u8 | reserved u8 | session u32 |
-- seq u64 | akey_block u64 | akey_offset u32 | body (length - 44) | tag (16 bytes).
-- Common bodies (HELLO .. PONG) are decoded here; other layers' bodies are shown as
-- bytes with their type name. HELLO and HELLO_ACK end with a 16-byte connection nonce
-- that the tags of later frames are bound to (spec §6.1; the binding is not on the wire).
-- Application frames are named (STREAM_DATA .. STREAM_NONCE); STREAM_NONCE's body is
-- the 16-byte stream nonce that the other end's SecureStream tags are bound to
-- (spec/apps.md §2).

local qkd = Proto("qkdnet", "qkdnet sideband")

local msg_types = {
    [0x01] = "HELLO", [0x02] = "HELLO_ACK", [0x03] = "ERROR", [0x04] = "CLOSE",
    [0x05] = "PING", [0x06] = "PONG",
}
local error_codes = {
    [0] = "NO_ERROR", [1] = "PROTOCOL_VIOLATION", [2] = "MALFORMED_FRAME",
    [3] = "UNSUPPORTED_VERSION", [4] = "UNKNOWN_MESSAGE_TYPE", [5] = "FRAME_TOO_LARGE",
    [6] = "AUTHENTICATION_FAILED", [7] = "REPLAY_OR_REORDER", [8] = "KEY_EXHAUSTED",
    [9] = "LINK_ABORTED", [10] = "UNKNOWN_PEER", [11] = "NAME_CONFLICT", [12] = "TIMEOUT",
    [13] = "INTERNAL_ERROR", [14] = "THROTTLED",
}
local roles = { [0] = "unspecified", [1] = "spoke", [2] = "hub", [3] = "app", [4] = "tester" }

local app_types = {
    [0x60] = "STREAM_DATA", [0x61] = "STREAM_EOF", [0x62] = "HOP_DATA", [0x63] = "HOP_EOF",
    [0x64] = "STREAM_NONCE", [0x70] = "LOCAL_REQUEST", [0x71] = "LOCAL_REPLY",
    [0x72] = "LOCAL_DATA",
}

local function type_name(t)
    if msg_types[t] then return msg_types[t] end
    if app_types[t] then return app_types[t] end
    if t >= 0x10 and t <= 0x3F then return string.format("LINK_0x%02x", t) end
    if t >= 0x40 and t <= 0x5F then return string.format("HUB_0x%02x", t) end
    if t >= 0x60 and t <= 0x7F then return string.format("APP_0x%02x", t) end
    return string.format("RESERVED_0x%02x", t)
end

local f = qkd.fields
f.length = ProtoField.uint32("qkdnet.length", "Length", base.DEC)
f.version = ProtoField.uint8("qkdnet.version", "Version", base.DEC)
f.type = ProtoField.uint8("qkdnet.type", "Type", base.HEX, msg_types)
f.flags = ProtoField.uint8("qkdnet.flags", "Flags", base.HEX)
f.flag_eog = ProtoField.bool("qkdnet.flags.end_of_group", "End of group", 8, nil, 0x01)
f.flag_deferred = ProtoField.bool("qkdnet.flags.deferred",
    "Deferred (no own tag; covered by the next tagged frame)", 8, nil, 0x02)
f.reserved = ProtoField.uint8("qkdnet.reserved", "Reserved", base.HEX)
f.session = ProtoField.uint32("qkdnet.session", "Session", base.DEC)
f.seq = ProtoField.uint64("qkdnet.seq", "Sequence", base.DEC)
f.akey_block = ProtoField.uint64("qkdnet.akey_block", "Tag key block", base.HEX)
f.akey_offset = ProtoField.uint32("qkdnet.akey_offset", "Tag key offset (bits)", base.DEC)
f.body = ProtoField.bytes("qkdnet.body", "Body")
f.tag = ProtoField.bytes("qkdnet.tag", "Tag (Poly1305, one-time padded)")
f.node_name = ProtoField.string("qkdnet.node_name", "Node name")
f.role = ProtoField.uint8("qkdnet.role", "Role", base.DEC, roles)
f.versions = ProtoField.bytes("qkdnet.versions", "Versions offered")
f.chosen_version = ProtoField.uint8("qkdnet.chosen_version", "Chosen version", base.DEC)
f.capabilities = ProtoField.uint32("qkdnet.capabilities", "Capabilities", base.HEX)
f.error_code = ProtoField.uint16("qkdnet.error_code", "Error code", base.DEC, error_codes)
f.reason = ProtoField.string("qkdnet.reason", "Reason")
f.nonce = ProtoField.uint64("qkdnet.nonce", "Nonce", base.HEX)
f.conn_nonce = ProtoField.bytes("qkdnet.conn_nonce", "Connection nonce")
f.stream_nonce = ProtoField.bytes("qkdnet.stream_nonce", "Stream nonce")

local MIN_LENGTH = 44

local function dissect_name(body, tree, pos)
    local n = body(pos, 1):uint()
    tree:add(f.node_name, body(pos + 1, n))
    return pos + 1 + n, body(pos + 1, n):string()
end

local function dissect_body(t, body, tree)
    local len = body:len()
    local info = ""
    if len == 0 then return info end
    if t == 0x01 then
        local pos, name = dissect_name(body, tree, 0)
        tree:add(f.role, body(pos, 1))
        local nv = body(pos + 1, 1):uint()
        if nv > 0 then tree:add(f.versions, body(pos + 2, nv)) end
        tree:add(f.capabilities, body(pos + 2 + nv, 4))
        tree:add(f.conn_nonce, body(pos + 6 + nv, 16))
        info = " name=" .. name
    elseif t == 0x02 then
        local pos, name = dissect_name(body, tree, 0)
        tree:add(f.role, body(pos, 1))
        tree:add(f.chosen_version, body(pos + 1, 1))
        tree:add(f.capabilities, body(pos + 2, 4))
        tree:add(f.conn_nonce, body(pos + 6, 16))
        info = " name=" .. name
    elseif t == 0x03 then
        local code = body(0, 2):uint()
        tree:add(f.error_code, body(0, 2))
        local n = body(2, 2):uint()
        if n > 0 then tree:add(f.reason, body(4, n)) end
        info = " " .. (error_codes[code] or tostring(code))
    elseif t == 0x04 then
        tree:add(f.error_code, body(0, 2))
    elseif t == 0x05 or t == 0x06 then
        tree:add(f.nonce, body(0, 8))
    elseif t == 0x64 then
        tree:add(f.stream_nonce, body(0, 16))
    else
        tree:add(f.body, body)
    end
    return info
end

local function frame_len(tvb, pinfo, offset)
    return tvb(offset, 4):uint() + 4
end

local function dissect_frame(tvb, pinfo, tree)
    local length = tvb(0, 4):uint()
    local t = tvb(5, 1):uint()
    local sub = tree:add(qkd, tvb(), "qkdnet sideband, " .. type_name(t))
    sub:add(f.length, tvb(0, 4))
    sub:add(f.version, tvb(4, 1))
    local ti = sub:add(f.type, tvb(5, 1))
    if not msg_types[t] then ti:append_text(" (" .. type_name(t) .. ")") end
    local fl = sub:add(f.flags, tvb(6, 1))
    fl:add(f.flag_eog, tvb(6, 1))
    fl:add(f.flag_deferred, tvb(6, 1))
    sub:add(f.reserved, tvb(7, 1))
    sub:add(f.session, tvb(8, 4))
    sub:add(f.seq, tvb(12, 8))
    sub:add(f.akey_block, tvb(20, 8))
    sub:add(f.akey_offset, tvb(28, 4))
    local info = ""
    if length >= MIN_LENGTH then
        local body_len = length - MIN_LENGTH
        if body_len > 0 then
            local btree = sub:add(qkd, tvb(32, body_len), type_name(t) .. " body")
            local ok, res = pcall(dissect_body, t, tvb(32, body_len):tvb(), btree)
            if ok then info = res else btree:add_expert_info(PI_MALFORMED, PI_ERROR, "bad body") end
        end
        sub:add(f.tag, tvb(32 + body_len, 16))
    else
        sub:add_expert_info(PI_MALFORMED, PI_ERROR, "length below 44")
    end
    pinfo.cols.protocol = "QKDNET"
    local text = type_name(t) .. " seq=" .. tostring(tvb(12, 8):uint64()) .. info
    if math.floor(tvb(6, 1):uint() / 2) % 2 == 1 then text = text .. " (deferred)" end
    local prev = tostring(pinfo.cols.info)
    if prev:find("QKD:", 1, true) then
        pinfo.cols.info:append(", " .. text)
    else
        pinfo.cols.info:set("QKD: " .. text)
    end
    return tvb:len()
end

function qkd.dissector(tvb, pinfo, tree)
    if tvb:len() >= 4 and tvb(0, 4):uint() < MIN_LENGTH then
        -- Not a frame we can delimit: show it raw instead of desegmenting forever.
        tree:add(qkd, tvb(), "qkdnet sideband (undecodable length)")
        pinfo.cols.protocol = "QKDNET"
        return tvb:len()
    end
    dissect_tcp_pdus(tvb, tree, 4, frame_len, dissect_frame, true)
    return tvb:len()
end

DissectorTable.get("tcp.port"):add(7787, qkd)
