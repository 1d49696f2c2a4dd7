"""What every part of msixlab shares: the root exception, one way to wait, one JSON-lines framer.

Standard library only: the guest agent imports this package inside the guest, the device
server and the host agent on the host, and none of those three import each other.
"""
