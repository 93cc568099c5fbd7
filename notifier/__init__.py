"""The notifier: pushes stored events to the gateway instances holding the recipients."""
