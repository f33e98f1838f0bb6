"""Tape media and drive model for SSC LUNs — not implemented yet.

The product card places sequential tape LUNs (media images with filemarks and
EOD) here; no issue has asked for them so far, so this package is empty on
purpose.  scsi-shell's tape commands are exercised against tgt's SSC LUNs.
"""
