"""Our iSCSI initiator: URL parsing, login, the asyncio client with Data-In
receive, convenience SCSI calls and a synchronous wrapper for tools.
It never imports the target side.
"""
