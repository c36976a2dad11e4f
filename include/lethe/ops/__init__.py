"""Operating Lethe itself: Airflow's own footprint of Lethe's runs (airflow_metadata_cleanup)."""
