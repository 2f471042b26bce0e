#!/bin/bash
# The DMC queue of aloop campaign {{name}}: one Slurm array task per job folder listed in jobs.txt
# (array index N = line N + 1). Rendered by aloop from its example template: copy the template,
# adapt the #SBATCH lines and the program launchers to your cluster, and name your copy in the
# campaign as labeler.batch_template. Placeholders, each in double braces: name, array, count,
# and the local paths queue and jobs. Paths below are relative to the queue folder, wherever it
# was copied:
#
#   cd queue && sbatch submit.sh                 # the {{count}} job(s) waiting when this was written
#   cd queue && sbatch --array=3,5 submit.sh     # run some jobs again (indices as in index.json)
#
#SBATCH --job-name=aloop-{{name}}
#SBATCH --array={{array}}
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=32
#SBATCH --cpus-per-task=1
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%A_%a.out

set -euo pipefail
# module load quantum-espresso qmcpack    # whatever provides pw.x, pw2qmcpack.x and qmcpack here

export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
# run.sh starts the programs through these; the MPI ranks must be a multiple of the twist count
export PW="srun pw.x" PW2QMCPACK="srun pw2qmcpack.x" QMCPACK="srun qmcpack"

cd "${SLURM_SUBMIT_DIR:-.}"
job=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" jobs.txt)
cd "$job"
# the id `aloop run` puts in queue/cancel.txt when a newer committee no longer wants this job
if [ -n "${SLURM_ARRAY_JOB_ID:-}" ]; then echo "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}" > slurm_job_id; fi
bash run.sh
