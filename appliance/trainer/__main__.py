import sys

from appliance.trainer.loop import main

sys.exit(main(sys.argv[1:]))
