"""Applications: OTP-secured trio streams, chat and file transfer."""
