"""The web demo, as a Hugging Face Space runs it: `python app.py [--model REPO_OR_DIR] [--host ...] [--port ...]`.

Same app as `desta-audio demo`; on a Space, set the model with the DESTA_AUDIO_MODEL variable.
"""

import sys

from desta_audio.demo import main

if __name__ == "__main__":
    sys.exit(main())
