import sys

from zfscratch.cli import main

sys.exit(main())
