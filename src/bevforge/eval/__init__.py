"""bevforge.eval"""
