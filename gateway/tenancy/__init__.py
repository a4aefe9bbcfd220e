"""Which Zipteams tenant and subtenant a user may see: the pure, Flask-free rules
(``rules``) and the choice of one team for a request (``choice``)."""
