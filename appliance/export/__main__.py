import sys

from appliance.export.job import main

sys.exit(main(sys.argv[1:]))
