"""Training: the configuration, the run, its callbacks, loggers, plugins and workloads, the CLI.

Imports torch and Lightning; the Streamlit server never imports this package (it starts runs in a
child process, amp_core.serve.worker).
"""
