"""What every part of the driver side uses: credentials kept out of records, the one job per output
folder, Tune's log filter, the installed version.
"""
