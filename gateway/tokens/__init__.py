"""Dashboard tokens, server-side: the Zipteams Auth Token API client, the per-process
token cache, the protections toward Zipteams (rate budget, back-off, breaker, retries)
and the per-instance shared memory they use."""
