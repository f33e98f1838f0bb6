"""SCSI traces: captures → PDUs → exchanges per I_T_L nexus (JSON lines),
replay of a trace against a live target, comparison and reports.

Only :mod:`.replay` talks to a target (through our initiator); the rest is
pure data processing, usable from tools and tests alike.
"""
