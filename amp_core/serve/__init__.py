"""What the Streamlit server uses to start and watch runs: the worker, live views, the hardware probe."""
