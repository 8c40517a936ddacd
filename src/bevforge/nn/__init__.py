"""bevforge.nn"""
