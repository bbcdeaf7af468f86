import sys

from connectors.postgres_sink.main import main

sys.exit(main())
