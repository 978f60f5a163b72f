import sys

from nailseg.cli import main

sys.exit(main())
