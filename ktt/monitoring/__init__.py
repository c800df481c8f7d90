"""Drift monitoring: the Evidently sidecar and the monitored build tree."""
