"""`cai plan`: what manifests will create before anything runs (`estimate`), and its terminal view
(`render`). Above the runners in the layers: it reads the operator's pure builders (Job names, Indexed
Jobs) and the offline validation, and imports no ML library."""
