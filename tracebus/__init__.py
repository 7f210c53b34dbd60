"""tracebus: the application SDK (issue 9 builds it here)."""
