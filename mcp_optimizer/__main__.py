import sys

from mcp_optimizer.cli.main import main

sys.exit(main())
