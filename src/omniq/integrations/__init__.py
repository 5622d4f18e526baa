"""Integrations with other tools, each importing its extra only when used: the web dashboard
(``omniq.integrations.dashboard``, extra ``dashboard``). ``import omniq`` imports none of them."""
