"""Tables and figures, built from result rows only (nirvana.results) and plans — never from live models."""
