"""Run the whole system locally: the page, the functions and an Appwrite-compatible surface."""
