"""Binary layouts of SCSI data, declared once for both sides.

The target builds its responses from these classes and the initiator (and the
``scsi-shell`` console) decodes with the same ones:

* :mod:`.fields`   -- the field-table machinery (``Struct``, ``F``)
* :mod:`.inquiry`  -- standard INQUIRY data
* :mod:`.vpd`      -- VPD pages 00h/80h/83h/8Fh/B0h/B1h/B2h
* :mod:`.capacity` -- READ CAPACITY (10)/(16), GET LBA STATUS
* :mod:`.mode`     -- mode parameter headers, block descriptors, pages 01h/08h/0Ah/0Fh/10h/1Ch
* :mod:`.luns`     -- REPORT LUNS
* :mod:`.rsoc`     -- REPORT SUPPORTED OPERATION CODES (+ timeouts descriptor)
* :mod:`.sense`    -- fixed and descriptor sense data
* :mod:`.pr`       -- PERSISTENT RESERVE IN data (incl. READ FULL STATUS), TransportIDs
* :mod:`.xcopy`    -- EXTENDED COPY parameter list, RECEIVE COPY RESULTS data
* :mod:`.tape`     -- READ POSITION, READ BLOCK LIMITS
* :mod:`.cdbs`     -- CDB builders for the initiator side

Submodules are imported explicitly by users (this package imports nothing) so
that ``scsi_target.scsi.sense`` can use :mod:`.sense` without an import cycle.
"""
