"""`python -m scsi_target` is the `scsi-target` command."""
from .cli import main

raise SystemExit(main())
