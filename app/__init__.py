"""The desktop chat client (ttkbootstrap)."""
