import sys

from edgefleet.dispatcher.cli import main

sys.exit(main())
