"""The page of ``python -m blspkd.bin.serve`` (index.html, app.js, style.css): static files, served by the server."""
