"""bevforge.data.nuscenes"""
