"""What a person reads and looks at: console tables and figures, built from typed results."""
