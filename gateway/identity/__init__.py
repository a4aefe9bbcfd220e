"""Who the user is: the identity header or assertion of a trusted proxy, OIDC at the
partner's IdP, signed hand-offs, and the session that remembers the answer (with its
revocations). Nothing here knows about teams or tokens."""
