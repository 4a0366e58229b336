"""The churn team's model: its trainer (``churn_model.trainer``) and its snapshots
(``churn_model.snapshot``)."""
