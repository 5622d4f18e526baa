"""Task events: batched logging (``logger``), live subscriptions (``processor``) and this
process's counters and timings (``metrics``)."""
