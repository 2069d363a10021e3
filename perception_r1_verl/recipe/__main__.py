import sys

from perception_r1_verl.recipe.main import main

sys.exit(main())
