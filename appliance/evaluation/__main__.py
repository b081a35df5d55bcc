import sys

from appliance.evaluation.job import main

sys.exit(main(sys.argv[1:]))
