"""What both ends of iSCSI share: PDU records and their codec, framing and
digests, text parameters and negotiation rules, CHAP, serial arithmetic.

Nothing here opens a socket or knows which end it runs on.
"""
