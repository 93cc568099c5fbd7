"""The query service: PageNow's REST reads and conversation creation."""
