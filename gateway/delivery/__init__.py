"""What the browser gets: the embed page and its companions (loading page, host SDK),
and the dashboard reverse proxy that keeps the token on the server."""
