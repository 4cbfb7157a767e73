"""Settlement: the worker that settles delivered prescriptions and visits, and the monthly statements.

``worker`` (rx.events → SettlePrescription / SettleConsultation), ``claims`` (record → Claim → command),
``statements`` (closing a month, releasing the deposit), ``render`` (CSV and PDF), ``run`` (composition root).
"""
