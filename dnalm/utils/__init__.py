"""What every layer above uses and nothing here imports from above: errors, atomic files, fault points for tests,
devices, memory measurement and plots."""
