"""The target side of iSCSI: configured targets (registry), the login state
machine, sessions, the sans-I/O connection and the asyncio server that
drives it.  It never imports the initiator.
"""
