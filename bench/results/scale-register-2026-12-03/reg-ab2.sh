#!/bin/bash
for r in 1 2; do for only in local across; do /work/runs/reg-ab.sh $r $only; done; done
