"""bevforge.data"""
