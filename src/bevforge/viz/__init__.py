"""bevforge.viz"""
