"""Evaluation: the loop with resume and the summary (evaluate), shared by `mathrl eval`, `mathrl grade`
(regrade) and the task suite (suite)."""
