"""The bottom layer every package may import: settings and the exception hierarchy."""
