"""A text file for perplexity in tests that must run without the offline assets (`make test-fast`): the standard
library's pydoc topics, written once per machine. Metric names then read `ppl/pydoc@<len>`."""

import tempfile
from pathlib import Path

from nirvana.tiny import pydoc_text

PYDOC_FILE = Path(tempfile.gettempdir()) / "nirvana-tests" / "pydoc.txt"
if not PYDOC_FILE.is_file() or PYDOC_FILE.stat().st_size == 0:
    PYDOC_FILE.parent.mkdir(parents=True, exist_ok=True)
    tmp = PYDOC_FILE.with_suffix(".tmp")
    tmp.write_text(pydoc_text()[:60000])
    tmp.replace(PYDOC_FILE)
