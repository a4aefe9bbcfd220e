"""Dashboard tokens, server-side: the Zipteams Auth Token API client, the per-process
token cache and the protections toward Zipteams (rate budget, back-off, breaker, retries),
each worker process's own unless Redis shares them."""
